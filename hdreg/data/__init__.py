"""Images and pairs: image sources (``sources``, ``cache``), pair generators
(:mod:`hdreg.data.synthetic`), real image pairs (:mod:`hdreg.data.real`), benchmark files and
protocols (:mod:`hdreg.data.benchmarks`), and the Lightning DataModules that feed training."""
