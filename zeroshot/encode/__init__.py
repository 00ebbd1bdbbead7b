"""The model side: text prompts -> class weights (cached), images -> embeddings (one loop)."""
