"""Networks and processes: no tracking, no I/O."""
