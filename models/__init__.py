"""The default-prediction networks, the feature encoder, credit metrics and score scaling.
No Flower code here."""
