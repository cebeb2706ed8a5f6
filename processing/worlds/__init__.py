"""The synthetic shapes world (`shapes`): scenes, captions and their truth (`caption_holds`), foils that read like
true captions (`text_balance`), evaluation items (`eval_sets`) and VQA questions (`synthetic_vqa`)."""
