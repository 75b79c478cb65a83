"""Thin CLI adapters: argument parsing and printing over the library's typed functions."""
