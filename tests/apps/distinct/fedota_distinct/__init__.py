"""No-training Message-API app whose clients each return their own arrays (benchmark fixture)."""
