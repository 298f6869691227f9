"""What the nets learned: analysis stages over trained models (correlate, ...), and what they share."""
