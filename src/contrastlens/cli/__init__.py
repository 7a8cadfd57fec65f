"""Command-line interface: a thin dispatcher over one module per subcommand."""
