from galley_sdk import evaluator


@evaluator
def exact_match(prediction, references, **metadata):
    """1.0 when the prediction equals a reference after trimming and lower-casing.
    Summary: the mean of each metric, plus `count`."""
    pred = prediction.strip().lower()
    return {"exact_match": float(any(r.strip().lower() == pred for r in references))}
