"""One module per `fedmoe` subcommand, each with `main(argv) -> int`."""
