"""Fixed benchmarks on disk: the synthetic ``.npz`` format and its writer (``synthetic``), the
COCO-test2017 protocol (``coco_test``) and the wide-motion protocol (``wide``)."""
