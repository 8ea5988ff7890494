"""What the command lines share: one launch routine, clear errors, checks of what a user asked for."""
