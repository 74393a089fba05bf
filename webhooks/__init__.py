"""The delivery service's domain: catalog, publishing, delivery, signing, transport."""
