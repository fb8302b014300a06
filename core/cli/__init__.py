"""The `tuckerscope` command line: main plus one module per subcommand."""
