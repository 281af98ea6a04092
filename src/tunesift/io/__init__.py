"""Input and output formats: reading a fine-tuning set into records, and what trainers read back.

* :mod:`tunesift.io.files`: the file formats, opened into ``(row, Loc)`` pairs; the input checksum.
* :mod:`tunesift.io.schema`: which fields hold the prompt and the response (schema detection,
  :class:`~tunesift.io.schema.FieldMap`).
* :mod:`tunesift.io.chat`: chat turns -> prompt, response and earlier turns.
* :mod:`tunesift.io.records`: :class:`~tunesift.io.records.Record` and the readers
  (:func:`~tunesift.io.records.read_records`, :func:`~tunesift.io.records.records_from_rows`).
* :mod:`tunesift.io.trainers`: LLaMA-Factory's ``dataset_info.json`` entry for a selection.
* :mod:`tunesift.io.describe`: located one-line errors and short descriptions of user values.

docs/input-formats.md has the rules; docs/trainers.md the recipes.
"""
