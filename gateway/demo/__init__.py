"""What `tongban demo` runs on one machine: demo back-ends, identity providers and portals."""
