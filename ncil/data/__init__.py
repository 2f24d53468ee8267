"""Data sets, class orders and task splits."""
