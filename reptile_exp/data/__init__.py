"""Task distributions: sine regression and N-way K-shot image classification."""
