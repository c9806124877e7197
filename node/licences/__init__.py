"""Electronic licences (电子证照, SPEC §13)."""
