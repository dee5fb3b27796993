"""The omni-agent command line."""
