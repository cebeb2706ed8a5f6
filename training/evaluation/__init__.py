"""`vlp evaluate`: the zero-shot evaluation suites (`suite`), their text-only floors (`shortcuts`) and the report of
what a masking policy hides (`mask_report`, `vlp masks`)."""
