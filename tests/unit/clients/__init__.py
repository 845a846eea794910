"""Unit tests of the device agent's and the fleet simulator's pure pieces."""
