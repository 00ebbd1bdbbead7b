"""What users ask for, built on the data, encode and output layers: classify, evaluate."""
