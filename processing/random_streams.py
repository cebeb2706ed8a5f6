"""Every random stream of VLP, in one table, so that no two purposes ever draw the same numbers.

A stream is the last entry of a NumPy seed tuple, e.g. ``np.random.default_rng([seed, epoch, index, MLM_STREAM])``:
two purposes that shared an id and a tuple shape would draw correlated numbers for the same sample. The shapes world
and the synthetic VQA questions pack (seed, index, purpose) into one integer for ``random.Random`` (two bits of
purpose); those ids live in `WORLD_STREAMS`. `tests/unit/test_random_streams.py` checks that all ids are distinct and
that no module defines a stream id of its own.
"""

# Per sample: np.random.default_rng([seed, epoch, dataset index, STREAM]).
CAPTION_STREAM = 0  # which of a sample's captions it shows this epoch (pretraining_data)
ITM_STREAM = 1  # the ITM coin and negative caption (pretraining_data)
ITM_POSITIVE_STREAM = 4  # the ITM positive caption and the scene it must be false for (pretraining_data)
MLM_STREAM = 2  # the collator's MLM mask and 80/10/10 replacements
MIM_STREAM = 3  # the collator's MIM patch mask
GITM_STREAM = 5  # grouped matching: the canvas, its images and its caption segments (grouping)
PATCH_STREAM = 6  # attention-guided masking: the patch mask
WORD_STREAM = 7  # attention-guided masking: the word mask
WORD_REPLACE_STREAM = 21  # attention-guided masking: the 80/10/10 replacements of the masked words

# Per step or epoch: np.random.default_rng([seed, step or epoch, ..., STREAM]).
OBJECTIVE_STREAM = 0x0B7  # `mixing: sample`: the step's objective
HARD_NEGATIVE_STREAM = 0x4A7  # the torch generator of the step's hard-negative draws (per process)
SAMPLER_STREAM = 0x5A3  # the epoch's permutation of a map-style dataset
RATIO_STREAM = 0xA77  # attention-guided masking: the step's masking ratio
MIX_QUOTA_STREAM = 0x313  # a caption mixture's per-source quota draws
MIX_ORDER_STREAM = 0x314  # a caption mixture's interleaving order
SHARD_ORDER_STREAM = 0x5D1  # webdataset: the epoch's shard order
SHARD_MIX_STREAM = 0x5D2  # webdataset: the order within a weighted mixture of sources
BUFFER_STREAM = 0x5D3  # webdataset: the shuffle buffer of one worker
MASK_PROBE_STREAM = 0x9B1  # a study's check that its arms draw different masks (guided_masking.mask_fingerprint)

# random.Random(((seed << 32) | index) << 2 | purpose): two bits of purpose.
WORLD_STREAMS = {"scene": 1, "noise": 2, "vqa_question": 3}

NUMPY_STREAMS = {name: value for name, value in globals().items() if name.endswith("_STREAM")}

__all__ = sorted(NUMPY_STREAMS) + ["NUMPY_STREAMS", "WORLD_STREAMS"]
