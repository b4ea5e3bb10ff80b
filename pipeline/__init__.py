"""Ray Data video tokenization: discover → decode → tokenize → Parquet shards, and their readers.

Modules (each stage is a plain class that runs without Ray; ``job`` only wires them with Ray Data):

* :mod:`pipeline.discover` — list input videos (directory, glob, CSV/JSONL list; local or URI), ids, splits.
* :mod:`pipeline.decode` — :class:`~pipeline.decode.DecodeStage`: decord/PyAV in a timed-out child process,
  resize + centre crop, segments, a reason for every failure.
* :mod:`pipeline.tokenize` — :class:`~pipeline.tokenize.TokenizeStage`: the tokenizer actor stage.
* :mod:`pipeline.writer` — shard schema, :class:`~pipeline.writer.ShardWriter`, the Ray ``Datasink``.
* :mod:`pipeline.manifest` — scan/repair of a shard directory (resuming), ``manifest.json``.
* :mod:`pipeline.job` — :func:`~pipeline.job.run_tokenize_job`.
* :mod:`pipeline.readers` — manifest, Ray dataset, training windows, evaluation clips, segment round trip.

Nothing is imported here: the decoder child process imports :mod:`pipeline.decode` alone.
See ``docs/pipeline.md``.
"""
