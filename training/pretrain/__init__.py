"""Pretraining on Accelerate: the step loop (`loop.pretrain`), the run around it (`run`: start, resume, finish),
what a run is built from (`factory`: model, optimizer, accelerator), its data (`data`), batches (`sampler`),
checkpoints (`checkpointing`), validation (`validation`) and the guidance pass of attention-guided masking
(`guided_masking`)."""
