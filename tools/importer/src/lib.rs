//! Imports AIS vessel reports in MarineCadastre's CSV format into Meridian.
