//! `ca data ...` subcommands.
