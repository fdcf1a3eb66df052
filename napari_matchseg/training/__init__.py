"""Episodic training of MatchSeg (no Qt): data, augmentation, synthetic tasks, losses, the loop."""
