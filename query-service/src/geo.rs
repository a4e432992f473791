//! The bounding box that the snapshot endpoint and area subscriptions filter locations by.

/// A longitude and latitude range in degrees, edges included, that does not cross the
/// antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundingBox {
    pub min_longitude: f64,
    pub min_latitude: f64,
    pub max_longitude: f64,
    pub max_latitude: f64,
}

impl BoundingBox {
    /// Checks the four corners: finite, longitudes within ±180, latitudes within ±90, each
    /// minimum at most its maximum. The error is the reason, for the caller to put in a
    /// response that names its field.
    pub fn new(
        min_longitude: f64,
        min_latitude: f64,
        max_longitude: f64,
        max_latitude: f64,
    ) -> Result<Self, String> {
        for (name, value, limit) in [
            ("min_lon", min_longitude, 180.0),
            ("min_lat", min_latitude, 90.0),
            ("max_lon", max_longitude, 180.0),
            ("max_lat", max_latitude, 90.0),
        ] {
            if !value.is_finite() {
                return Err(format!("{name} {value} is not a finite number"));
            }
            if !(-limit..=limit).contains(&value) {
                return Err(format!("{name} {value} is outside -{limit} to {limit}"));
            }
        }
        if min_longitude > max_longitude {
            return Err(format!(
                "min_lon {min_longitude} is greater than max_lon {max_longitude}; \
                 the box may not cross the antimeridian"
            ));
        }
        if min_latitude > max_latitude {
            return Err(format!(
                "min_lat {min_latitude} is greater than max_lat {max_latitude}"
            ));
        }
        Ok(Self {
            min_longitude,
            min_latitude,
            max_longitude,
            max_latitude,
        })
    }

    /// The whole world.
    pub const WORLD: Self = Self {
        min_longitude: -180.0,
        min_latitude: -90.0,
        max_longitude: 180.0,
        max_latitude: 90.0,
    };

    pub fn contains(&self, latitude: f64, longitude: f64) -> bool {
        (self.min_latitude..=self.max_latitude).contains(&latitude)
            && (self.min_longitude..=self.max_longitude).contains(&longitude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corners_are_checked() {
        assert!(BoundingBox::new(-180.0, -90.0, 180.0, 90.0).is_ok());
        assert!(BoundingBox::new(5.0, 5.0, 5.0, 5.0).is_ok());
        assert!(BoundingBox::new(-181.0, 0.0, 0.0, 0.0).is_err());
        assert!(BoundingBox::new(0.0, -91.0, 0.0, 0.0).is_err());
        assert!(BoundingBox::new(f64::NAN, 0.0, 1.0, 1.0).is_err());
        let crossing = BoundingBox::new(170.0, 0.0, -170.0, 10.0).unwrap_err();
        assert!(crossing.contains("antimeridian"), "{crossing}");
        assert!(BoundingBox::new(0.0, 10.0, 1.0, 5.0).is_err());
    }

    #[test]
    fn edges_are_inside() {
        let area = BoundingBox::new(-74.1, 40.6, -73.9, 40.8).unwrap();

        assert!(area.contains(40.7, -74.0));
        assert!(area.contains(40.6, -74.1));
        assert!(!area.contains(40.9, -74.0));
        assert!(!area.contains(40.7, -73.0));
    }
}
