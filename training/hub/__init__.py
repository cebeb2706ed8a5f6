"""The Hub: `vlp push` (a run's checkpoint with its model card, `publish`) and `vlp convert-vilt` (`convert_vilt`)."""
