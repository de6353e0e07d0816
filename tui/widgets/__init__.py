"""The console's widgets, one per module, named for what they show."""
