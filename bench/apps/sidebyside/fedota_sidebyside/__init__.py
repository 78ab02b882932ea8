"""Side-by-side benchmark app: Flower's FedAvg, distinct replies, one timestamp per round."""
