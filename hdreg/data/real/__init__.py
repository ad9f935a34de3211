"""Real image pairs: ground-truth pairs in the HPatches / Oxford layouts (``pairs``), pairs of a
user's own images without ground truth (``unlabeled``), and the public datasets (``catalogue``)
that ``download`` fetches."""
