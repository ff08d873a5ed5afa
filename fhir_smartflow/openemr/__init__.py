"""OpenEMR: write-back target over the Standard API and the token handling it needs."""
