"""The `rtt` command line: a thin dispatcher and one function per subcommand."""
