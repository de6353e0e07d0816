"""The console's screens, one per module: the five dashboard screens, help and the dialogs."""
