"""Quality filtering of conversation records: rules, near-duplicates, decontamination."""
