"""Pretraining on Accelerate: the loop (`loop.pretrain`), its data (`data`), batches (`sampler`), checkpoints
(`checkpointing`), validation (`validation`) and the guidance pass of attention-guided masking (`guided_masking`)."""
