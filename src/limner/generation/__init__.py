"""Generation requests, records and the pipeline from a run folder to images."""
