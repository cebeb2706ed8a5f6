"""`vlp study`: pretrain every mix of a study for every seed, evaluate, and compare with the baseline (`runner`);
the report, its tables and plots (`report`)."""
