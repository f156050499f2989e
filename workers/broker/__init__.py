"""The broker side hardened: messages that cannot become jobs, and messages the broker lost."""
