"""Synthetic pairs with exact labels: DeTone pairs (``detone``, on the GPU ``detone_torch``) and
wide-motion pairs (``wide_protocol``, ``wide_motion``, ``render``, ``photometric``, ``wide``; on
the GPU ``wide_torch``), each pair seeded by its own index (:mod:`hdreg.data.seeding`)."""
