"""Readers of real data: pretraining captions (`captions`), WebDataset shards (`webdataset`), downstream VQA and
caption sets (`downstream`) and zero-shot benchmarks (`benchmarks`: VALSE, SugarCrepe, ARO, Winoground, probing)."""
