"""The model zoo (installed as ``snn2hw.models``): reference networks, their tasks and training recipes."""
