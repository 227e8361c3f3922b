"""Image classification on the shared SAP core: data, models, training and evaluation."""
