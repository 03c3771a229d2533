"""MoCo v2 pre-training tickets: the IMP script and the MoCo model it prunes."""
