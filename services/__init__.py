"""The one consume→handle→produce runtime and one package per service."""
