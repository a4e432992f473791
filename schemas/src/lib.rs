//! JSON Schemas of Meridian events and a validator for them.
