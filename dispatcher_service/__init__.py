"""The dispatcher: durable ingestion of events, signing, and delivery with retries."""
