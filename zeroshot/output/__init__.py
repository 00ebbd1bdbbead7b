"""Rows and files: one format table for every command, atomic writes, the resume journal."""
