"""Electronic licences (电子证照): the catalogue, verification at the issuer (谁制发谁核验) with the
gateway's own check of the issuer's electronic seal, and 免证办 materials of cases."""
