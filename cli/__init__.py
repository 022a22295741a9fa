"""The ``sqreen-spool`` command line, installed as ``sqreen.cli``."""
