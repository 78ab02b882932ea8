"""Test fixture: Flower's SecAgg+ (SecAggPlusWorkflow + secaggplus_mod), unedited."""
